# fhirsvc service image: slim, multi-stage, non-root; entry point `fhirsvc serve`. The example patients (fixtures/)
# stay out of it: they are for `fhirsvc demo` in a source checkout. .dockerignore keeps the context to what is copied.
FROM python:3.11-slim AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY requirements.lock ./
RUN python -m venv /opt/fhirsvc && /opt/fhirsvc/bin/pip install -r requirements.lock
COPY pyproject.toml README.md ./
COPY fhirsvc ./fhirsvc
COPY mappings ./mappings
# pyproject.toml bundles fixtures/ into the wheel (for `pip install` users); an empty folder bundles nothing.
RUN mkdir fixtures \
    && /opt/fhirsvc/bin/pip install --no-deps . && /opt/fhirsvc/bin/python -m compileall -q /opt/fhirsvc

FROM python:3.11-slim
ENV PYTHONUNBUFFERED=1 PATH=/opt/fhirsvc/bin:$PATH \
    FHIRSVC_STORE_URL=sqlite:////var/lib/fhirsvc/fhirsvc.db
RUN groupadd --system --gid 999 fhirsvc && useradd --system --uid 999 --gid fhirsvc --home /var/lib/fhirsvc fhirsvc \
    && mkdir -p /var/lib/fhirsvc && chown fhirsvc:fhirsvc /var/lib/fhirsvc
COPY --from=build /opt/fhirsvc /opt/fhirsvc
USER fhirsvc
WORKDIR /var/lib/fhirsvc
EXPOSE 8000
# The slim image has no curl: Python's urllib probes /livez (urlopen raises on a refused connection or a non-2xx).
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/livez', timeout=4)"]
ENTRYPOINT ["fhirsvc"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8000"]
