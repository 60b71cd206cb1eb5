"""Stage `train`: oversampling (`balance`), augmentation and the image stream (`augment`), the Ray Train
worker (`loop`), the driver (`job`), the outputs after training (`posttrain`), and `--tune-training`
(`hyperparams`)."""
