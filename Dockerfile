# rbdpy in a container: the same install script as the README, then `rbdpy up` on 0.0.0.0.
#   docker build -t rbdpy .
#   docker run --rm -p 10809:10809 -v rbdpy-data:/data rbdpy
FROM debian:bookworm
WORKDIR /opt/rbdpy
COPY pyproject.toml README.md ./
COPY scripts ./scripts
COPY rbdpy ./rbdpy
COPY nbdplugin ./nbdplugin
RUN ./scripts/install.sh && rm -rf /var/lib/apt/lists/*
ENV PATH=/opt/rbdpy/.venv/bin:$PATH
VOLUME /data
EXPOSE 10809
STOPSIGNAL SIGINT
CMD ["rbdpy", "up", "--data", "/data", "--bind", "0.0.0.0", "--port", "10809"]
