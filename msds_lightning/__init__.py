"""msds-lightning: certifiably robust classifiers with diffusion denoisers.

Sub-packages
------------
``smoothing``  the certification core: pure torch + scipy/statsmodels, no Lightning.
``models``     bare networks: diffusion denoiser, timm classifier, denoise-then-classify.
``data``       Lightning data modules yielding ``(image, label, dataset_index)``.
``modules``    Lightning modules (certification, training).
``results``    the per-image TSV format (Cohen et al.'s columns first).
``analysis``   certified accuracy, ACR and abstention tables and plots (``msds analyze``).
"""

__version__ = "0.1.0"
