"""kzoo.metrics: video metrics (per-frame MSE, MAE, PSNR, SSIM) as functions and Keras metrics."""

from kzoo.metrics.video import (  # noqa: F401
    PSNR,
    SSIM,
    FrameMAE,
    FrameMSE,
    frame_mae,
    frame_mse,
    frame_psnr,
    frame_ssim,
    per_frame_metrics,
)

__all__ = [
    "PSNR",
    "SSIM",
    "FrameMAE",
    "FrameMSE",
    "frame_mae",
    "frame_mse",
    "frame_psnr",
    "frame_ssim",
    "per_frame_metrics",
]
