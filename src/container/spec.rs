//! The OCI runtime spec generator: a pure function from config, image and pod to a spec.
