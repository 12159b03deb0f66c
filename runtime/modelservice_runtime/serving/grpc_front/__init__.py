"""The Open Inference Protocol over gRPC: the second front end over the data plane."""
