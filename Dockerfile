# kubemeter: one image for the operator (`kubemeter operator`) and the exporter
# (`kubemeter-exporter`).
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY operator ./operator
COPY exporter ./exporter
COPY crds ./crds
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim
RUN useradd --uid 10001 --create-home kubemeter
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
USER 10001
ENTRYPOINT []
CMD ["kubemeter", "--help"]
