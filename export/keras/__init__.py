"""``statecast import``: Keras 3 models converted layer by layer into ONNX step models.

- :mod:`.layers`: the PyTorch block for each supported Keras layer (no keras import);
- :mod:`.graph`: reads the layer stack, refuses what cannot stream, converts the rest;
- :mod:`.step`: the window, stateful and stateless step modules around a converted stack;
- :mod:`.reference`: what Keras itself predicts for parity inputs; :mod:`.refstore` keeps
  it beside the ONNX file for ``statecast models verify`` (onnxruntime only);
- :mod:`.importer`: the whole import; :mod:`.frame_cnn`: the shipped ``frame_cnn`` recipe.

See docs/bring-your-own-model.md.
"""
