"""The seed's "Custom configuration" example; the plugin class is in `configurable.core`."""
