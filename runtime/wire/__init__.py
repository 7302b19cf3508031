"""What crosses a pipe: the codec (pickling, event-class keys, workflow definitions) and the framing."""

from runtime.wire.codec import Codec
from runtime.wire.framing import FrameReader, frame

__all__ = ["Codec", "FrameReader", "frame"]
