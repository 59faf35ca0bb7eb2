from tsops.cli import main

main()
