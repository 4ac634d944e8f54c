# The web service in a container, for a cloud host. Build and run (from the project folder):
#   python scripts/6_deploy.py --no-serve        # prints the bundle folder, e.g. ~/imgclass_data/deploy/<ds>/svm
#   rm -rf bundle && cp -r <bundle folder> bundle  # the image serves the bundle copied in here (git ignores it)
#   docker build -t imgclass-service .
#   docker run -p 8000:8000 imgclass-service      # then open http://localhost:8000/
#   docker run -e IMGCLASS_API_KEY=<secret> -p 8000:8000 imgclass-service   # /score and /info need the key
# The service needs only the bundle (model.onnx + bundle.json): no training data, no torch at run time.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 IMGCLASS_OFFLINE=1
WORKDIR /app

COPY requirements.txt pyproject.toml README.md PARAMETERS.py ./
# Only the requirements the service imports (with requirements.txt's version bounds): no torch, so the image
# is a few hundred MB instead of several GB. Use `pip install -r requirements.txt` to export in it too.
RUN grep -E '^(numpy|pillow|pillow-heif|onnxruntime|fastapi|uvicorn|python-multipart|tqdm)[<>=]' requirements.txt > /tmp/serve-req.txt \
    && pip install -r /tmp/serve-req.txt
COPY libraries/ libraries/
COPY scripts/ scripts/
RUN pip install --no-deps --no-build-isolation -e .
COPY bundle/ /bundle/

EXPOSE 8000
USER nobody
HEALTHCHECK --interval=30s --timeout=5s CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=4)"
# 0.0.0.0: reachable from outside the container (the script's default is 127.0.0.1).
CMD ["python", "scripts/6_deploy.py", "--bundle", "/bundle", "--host", "0.0.0.0", "--port", "8000", "--set", "DATA_DIR=/tmp/imgclass_data"]
