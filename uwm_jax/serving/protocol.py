"""The wire format of openpi's websocket policy protocol: msgpack with numpy arrays.

Written from the format (docs/serving.md "Protocol"), compatible with openpi-client's
`msgpack_numpy` both ways:
  numpy array   -> map {b"__ndarray__": True, b"data": <raw bytes, C order>,
                        b"dtype": <dtype.str, e.g. "<f4">, b"shape": [dims...]}
  numpy scalar  -> map {b"__npgeneric__": True, b"data": <python value>, b"dtype": <dtype.str>}
(keys are msgpack *bin* strings). Object, void and complex dtypes are refused. Every other
value is plain msgpack (str keys, lists, numbers, bytes).

Messages: the server's first message is the metadata (binary); then each binary request (an
observation dict) gets one binary reply, or a *text* frame holding an error message.
"""

from typing import Any

import msgpack
import numpy as np

NDARRAY = b"__ndarray__"
NPGENERIC = b"__npgeneric__"
_REFUSED_KINDS = ("O", "V", "c")


class ProtocolError(ValueError):
  """A frame that is not a valid message of the protocol."""


def _encode_numpy(obj: Any) -> Any:
  if isinstance(obj, (np.ndarray, np.generic)) and obj.dtype.kind in _REFUSED_KINDS:
    raise TypeError(f"Cannot send numpy dtype {obj.dtype} (object, void and complex refused).")
  if isinstance(obj, np.ndarray):
    return {NDARRAY: True, b"data": np.ascontiguousarray(obj).tobytes(), b"dtype": obj.dtype.str,
            b"shape": list(obj.shape)}
  if isinstance(obj, np.generic):
    return {NPGENERIC: True, b"data": obj.item(), b"dtype": obj.dtype.str}
  raise TypeError(f"Cannot send a {type(obj).__name__}.")


def _decode_numpy(obj: dict) -> Any:
  if NDARRAY in obj:
    try:
      dtype = np.dtype(obj[b"dtype"])
      if dtype.kind in _REFUSED_KINDS:
        raise ProtocolError(f"array dtype {dtype} is not accepted")
      shape = tuple(int(d) for d in obj[b"shape"])
      return np.frombuffer(obj[b"data"], dtype=dtype).reshape(shape)
    except ProtocolError:
      raise
    except (KeyError, TypeError, ValueError) as e:
      raise ProtocolError(f"malformed numpy array ({e})") from None
  if NPGENERIC in obj:
    try:
      return np.dtype(obj[b"dtype"]).type(obj[b"data"])
    except (KeyError, TypeError, ValueError) as e:
      raise ProtocolError(f"malformed numpy scalar ({e})") from None
  return obj


def pack(obj: Any) -> bytes:
  """A message (dicts, lists, numbers, str, numpy arrays) -> msgpack bytes."""
  return msgpack.packb(obj, default=_encode_numpy, use_bin_type=True)


def unpack(data: bytes) -> Any:
  """msgpack bytes -> the message (numpy arrays restored, read-only); ProtocolError if not."""
  try:
    return msgpack.unpackb(data, object_hook=_decode_numpy, raw=False, strict_map_key=False)
  except ProtocolError:
    raise
  except (msgpack.exceptions.ExtraData, msgpack.exceptions.UnpackException, ValueError,
          TypeError) as e:
    raise ProtocolError(f"malformed frame: not a msgpack message ({type(e).__name__})") from None
