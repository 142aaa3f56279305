"""The kubetune trainer: the stages that run inside the pods the operator creates."""
