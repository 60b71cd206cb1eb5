"""Stage `train`: oversampling (`balance`), augmentation and the image stream (`augment`), the Ray Train
worker (`loop`), the driver (`stage`), a line per epoch (`epoch_log`), the outputs after training
(`posttrain`) and the shortcut control's outputs (`control`)."""
