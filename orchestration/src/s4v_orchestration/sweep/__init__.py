"""Hyperparameter sweeps: sweep files, Ray Tune trials around ``train()``, MLflow parent runs."""
