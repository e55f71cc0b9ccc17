from django.urls import path

from .consumers import LivePageConsumer

websocket_urlpatterns = [
    path("ws/sagas/live/", LivePageConsumer.as_asgi()),
]
