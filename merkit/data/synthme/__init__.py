"""SynthME internals: procedural faces and AU displacement fields (public API: :mod:`merkit.data.synthetic`)."""
