# Build the single executable with Bun, then run it alone on a slim base.
FROM node:20-bookworm-slim AS build
WORKDIR /src
COPY package.json package-lock.json ./
RUN npm ci --no-audit --no-fund
COPY tsconfig.json bunfig.toml ./
COPY src ./src
COPY views ./views
COPY migrations ./migrations
RUN npm run build

FROM debian:bookworm-slim
RUN useradd --system --uid 10001 --home /data keybrake && mkdir -p /data && chown keybrake /data
COPY --from=build /src/dist/keybrake /usr/local/bin/keybrake
USER keybrake
ENV KEYBRAKE_DATA_DIR=/data KEYBRAKE_PORT=8080 KEYBRAKE_HOST=0.0.0.0
VOLUME /data
EXPOSE 8080
# SIGTERM drains: calls in flight finish and settle for up to KEYBRAKE_SHUTDOWN_GRACE (30s), so give
# `docker stop -t 40` (or a Kubernetes terminationGracePeriodSeconds) longer than that.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/keybrake"]
CMD ["serve"]
