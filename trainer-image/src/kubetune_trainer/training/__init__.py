"""The pieces of the `train` stage (kubetune_trainer.stages.train runs them): the model and its environment,
the data path, the callbacks around Hugging Face's Trainer, and the TrainingArguments built from the spec."""
