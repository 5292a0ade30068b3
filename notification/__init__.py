"""The notification service: events in, notifications stored and delivered in-app, by push
and by SMS."""
