"""TIM-Net itself: the reference model (`network`), the authors' Keras weights, batched inference."""

from .network import TIMNet, TIMNetConfig, count_parameters  # noqa: E402

__all__ = ["TIMNet", "TIMNetConfig", "count_parameters"]
