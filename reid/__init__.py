"""reid: person / vehicle re-identification with FastReID's science.

The library is plain PyTorch + numpy (+ faiss). It never imports prefect or mlflow:
orchestration lives in ``tasks/`` and ``flows/``.
"""
__version__ = "0.1.0"
