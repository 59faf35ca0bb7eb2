"""The SparkApplication's main file: runs the `tsops` command line with the application's
arguments, e.g. `mainApplicationFile: local:///opt/tsops/tsops_app.py` with
`arguments: [stream, --engine, spark, --project, /etc/tsops]`."""

from tsops.cli import main

if __name__ == "__main__":
    main()
