"""What the gateway and a worker process agree on, and nothing else: the frames on the
socket between them (protocol.py), the spec a worker starts from (spec.py) and the model
folder's contract both check (model_folder.py).
"""
