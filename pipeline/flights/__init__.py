"""Flights: cutting positions into flights, their track images and geometric features."""
