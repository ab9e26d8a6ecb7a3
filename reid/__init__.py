"""reid: person / vehicle re-identification with FastReID's science.

The library is plain PyTorch + numpy (+ faiss). It never imports prefect or mlflow:
orchestration lives in ``tasks/`` and ``flows/``.

``reid.load_model(config, weights)`` gives a model ready for feature extraction
(see ``reid.inference``).
"""
__version__ = "0.1.0"
__all__ = ["load_model"]


def __getattr__(name: str):
    # Lazy: ``import reid.errors`` (or the CLI's start) must not pay for importing torch.
    if name == "load_model":
        from reid.inference import load_model
        return load_model
    raise AttributeError(f"module 'reid' has no attribute {name!r}")
