//! Runnable programs that use the projection SDK against a running store server.
