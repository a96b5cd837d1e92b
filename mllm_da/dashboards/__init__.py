"""Looking at results: a run folder read back as sample rows (``samples``), logged to wandb with their images
(``wandb_run``, the one module that imports wandb, lazily), or written as one offline HTML page (``gallery``)."""
