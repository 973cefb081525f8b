"""K-fold cross-validation as one command: train every fold, evaluate each fold's best checkpoint, aggregate."""
