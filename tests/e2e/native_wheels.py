"""A function that uses popular wheels with native code, each for something real.

Shared by the native-wheel end-to-end test and the cold-start bench. Each
check returns a small JSON-able result, or raises: the handler reports which
packages work and where each was imported from.
"""

from __future__ import annotations

REQUIREMENTS = """\
numpy==2.1.3
pydantic==2.9.2
pydantic-core==2.23.4
annotated-types==0.7.0
typing-extensions==4.12.2
pillow==11.0.0
cryptography==43.0.3
cffi==1.17.1
pycparser==2.22
orjson==3.10.7
msgpack==1.1.0
lxml==5.3.0
"""

HANDLER = """
import importlib, io, traceback


def check_numpy():
    import numpy as np
    m = np.array([[2.0, 0.0], [0.0, 4.0]])
    inv = np.linalg.inv(m)  # LAPACK from the vendored OpenBLAS ($ORIGIN/../numpy.libs)
    return {"inv": inv.tolist(), "sum": int(np.arange(1000).sum())}


def check_pydantic():
    from pydantic import BaseModel, ValidationError
    from pydantic_core import ArgsKwargs  # the name the namespace-dir bug hid

    class User(BaseModel):
        id: int
        name: str

    user = User(id="7", name="ada")
    try:
        User(id="x", name="y")
        rejected = False
    except ValidationError:
        rejected = True
    return {"id": user.id, "rejected": rejected, "argskwargs": ArgsKwargs((1,)).args[0]}


def check_pillow():
    from PIL import Image
    image = Image.new("RGB", (64, 32), (200, 30, 30)).resize((32, 16))
    out = io.BytesIO()
    image.save(out, "JPEG")  # libjpeg from pillow.libs
    png = io.BytesIO()
    image.save(png, "PNG")  # zlib
    return {"size": list(image.size), "jpeg": out.getvalue()[:2].hex(),
            "png": len(png.getvalue()) > 0}


def check_cryptography():
    from cryptography.fernet import Fernet
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    key = Fernet.generate_key()
    token = Fernet(key).encrypt(b"secret")
    digest = hashes.Hash(hashes.SHA256())
    digest.update(b"abc")
    aes = AESGCM(AESGCM.generate_key(bit_length=128))
    sealed = aes.encrypt(b"\\0" * 12, b"data", None)
    return {
        "fernet": Fernet(key).decrypt(token).decode(),
        "sha256": digest.finalize().hex()[:16],
        "aesgcm": aes.decrypt(b"\\0" * 12, sealed, None).decode(),
    }


def check_orjson():
    import orjson
    return {"dumps": orjson.dumps({"a": [1, 2]}).decode()}


def check_msgpack():
    import msgpack
    return {"roundtrip": msgpack.unpackb(msgpack.packb({"k": [1, 2, 3]}))}


def check_lxml():
    from lxml import etree
    root = etree.fromstring("<r><i n='1'/><i n='2'/></r>")
    return {"xpath": root.xpath("sum(//i/@n)")}


CHECKS = {
    "numpy": check_numpy,
    "pydantic": check_pydantic,
    "PIL": check_pillow,
    "cryptography": check_cryptography,
    "orjson": check_orjson,
    "msgpack": check_msgpack,
    "lxml": check_lxml,
}


def handler(event, context):
    only = (event or {}).get("only")
    out = {}
    for name, check in CHECKS.items():
        if only and name not in only:
            continue
        try:
            result = check()
            module = importlib.import_module(name)
            out[name] = {"ok": True, "result": result, "file": module.__file__}
        except BaseException as exc:
            out[name] = {"ok": False, "error": f"{type(exc).__name__}: {exc}",
                         "trace": traceback.format_exc()[-800:]}
    return out
"""

EXPECTED = {
    "numpy": {"inv": [[0.5, 0.0], [0.0, 0.25]], "sum": 499500},
    "pydantic": {"id": 7, "rejected": True, "argskwargs": 1},
    "PIL": {"size": [32, 16], "jpeg": "ffd8", "png": True},
    "orjson": {"dumps": '{"a":[1,2]}'},
    "msgpack": {"roundtrip": {"k": [1, 2, 3]}},
    "lxml": {"xpath": 3.0},
}
