# One image for web, worker, beat and Flower; docker-compose.yml picks the command.
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
WORKDIR /app
# The runtime only: the test and benchmark packages (requirements.txt) stay out of the image.
COPY requirements-runtime.txt .
RUN pip install --no-cache-dir -r requirements-runtime.txt
# .dockerignore keeps .git, var/ (a development database and its tokens), .venv and the tests out.
COPY . .
RUN DEBUG=1 python manage.py collectstatic --noinput -v0
RUN useradd --create-home app && mkdir -p /app/var && chown -R app /app/var
USER app
EXPOSE 8000
CMD ["gunicorn", "config.asgi:application", "-k", "uvicorn_worker.UvicornWorker", "--bind", "0.0.0.0:8000", "--workers", "3"]
