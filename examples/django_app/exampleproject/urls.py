from django.urls import path

from shop import views

urlpatterns = [path("square/<int:n>", views.square)]
