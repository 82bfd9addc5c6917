# fhirsvc service image: slim, multi-stage, non-root; entry point `fhirsvc serve`.
FROM python:3.11-slim AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY requirements.lock ./
RUN python -m venv /opt/fhirsvc && /opt/fhirsvc/bin/pip install -r requirements.lock
COPY pyproject.toml README.md ./
COPY fhirsvc ./fhirsvc
COPY mappings ./mappings
COPY fixtures ./fixtures
RUN /opt/fhirsvc/bin/pip install --no-deps . && /opt/fhirsvc/bin/python -m compileall -q /opt/fhirsvc

FROM python:3.11-slim
ENV PYTHONUNBUFFERED=1 PATH=/opt/fhirsvc/bin:$PATH \
    FHIRSVC_STORE_URL=sqlite:////var/lib/fhirsvc/fhirsvc.db
RUN groupadd --system --gid 999 fhirsvc && useradd --system --uid 999 --gid fhirsvc --home /var/lib/fhirsvc fhirsvc \
    && mkdir -p /var/lib/fhirsvc && chown fhirsvc:fhirsvc /var/lib/fhirsvc
COPY --from=build /opt/fhirsvc /opt/fhirsvc
USER fhirsvc
WORKDIR /var/lib/fhirsvc
EXPOSE 8000
ENTRYPOINT ["fhirsvc"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8000"]
