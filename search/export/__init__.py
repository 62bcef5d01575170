"""Shipping a trial: rebuild its merged model on disk, write its mergekit YAML and model card,
upload it to the Hugging Face Hub."""
