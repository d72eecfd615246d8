"""Multi-label image classification training job."""
