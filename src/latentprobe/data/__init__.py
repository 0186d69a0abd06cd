"""Stage 1: the CIFAR data sets: reading the official files safely, downloading, batches on the device."""
