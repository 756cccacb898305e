"""Where replicas run: `base.Platform` is the interface the reconciler uses; `local` runs them as
processes supervised by the local agent."""
