"""Compiles every kernels/*.cu module with NVRTC (prelude prepended, as the registry does) and prints the log.

Needs only libnvrtc (no GPU): `pip download --no-deps nvidia-cuda-nvrtc` and unpack the wheel, then
`python3 scripts/nvrtc_check.py --lib path/to/libnvrtc.so.13 [--arch compute_90a]`. Exits 1 on any error.
"""
import argparse
import ctypes
import pathlib
import sys


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--lib", required=True)
    ap.add_argument("--arch", default="compute_90a")
    ap.add_argument("--ptx-out", help="also write each module's PTX here (for `ptxas -v` resource reports)")
    args = ap.parse_args()
    nvrtc = ctypes.CDLL(args.lib)
    root = pathlib.Path(__file__).resolve().parent.parent / "kernels"
    prelude = (root / "prelude.cuh").read_text()
    failed = False
    for cu in sorted(root.glob("*.cu")):
        src = (prelude + "\n" + cu.read_text()).encode()
        prog = ctypes.c_void_p()
        rc = nvrtc.nvrtcCreateProgram(ctypes.byref(prog), src, cu.name.encode(), 0, None, None)
        assert rc == 0, rc
        opts = [f"--gpu-architecture={args.arch}".encode(), b"--std=c++17"]
        arr = (ctypes.c_char_p * len(opts))(*opts)
        rc = nvrtc.nvrtcCompileProgram(prog, len(opts), arr)
        size = ctypes.c_size_t()
        nvrtc.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
        log = ctypes.create_string_buffer(size.value)
        nvrtc.nvrtcGetProgramLog(prog, log)
        text = log.value.decode(errors="replace").strip()
        print(f"{cu.name}: {'ok' if rc == 0 else 'FAILED'}")
        if text:
            print(text)
        failed |= rc != 0
        if rc == 0 and args.ptx_out:
            n = ctypes.c_size_t()
            nvrtc.nvrtcGetPTXSize(prog, ctypes.byref(n))
            ptx = ctypes.create_string_buffer(n.value)
            nvrtc.nvrtcGetPTX(prog, ptx)
            out = pathlib.Path(args.ptx_out)
            out.mkdir(parents=True, exist_ok=True)
            (out / (cu.stem + ".ptx")).write_bytes(ptx.value)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
