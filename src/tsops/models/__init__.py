"""The LSTM forecaster, baselines, windowing, training, backtests and the MLflow pyfunc wrapper."""
