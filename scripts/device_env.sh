# Sourced by the device scripts (run on the GPU machine from the repository root, with carry = ["dist"]): puts
# the image's NVRTC and cuBLASLt (Python CUDA wheels) on LD_LIBRARY_PATH, keeps compiled kernels in
# /tmp/engram-kernels, and unpacks dist/engram.gz to $ENGRAM.
libs=$(find / -xdev \( -name 'libnvrtc.so.13' -o -name 'libcublasLt.so.13' \) 2>/dev/null | xargs -r -n1 dirname | sort -u | paste -sd:)
export LD_LIBRARY_PATH="${libs}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export ENGRAM_KERNEL_CACHE=${ENGRAM_KERNEL_CACHE:-/tmp/engram-kernels}
mkdir -p /tmp/engram-bin && gunzip -c dist/engram.gz > /tmp/engram-bin/engram && chmod +x /tmp/engram-bin/engram
ENGRAM=/tmp/engram-bin/engram
