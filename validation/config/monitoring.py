"""`monitoring`: Prometheus, Alertmanager and the exporters on 127.0.0.1 (the monitoring task; stacks/monitoring/)."""
from __future__ import annotations

from typing import Optional

from pydantic import Field

from validation.config.base import Section


class Monitoring(Section):
    # Prometheus on basePort, Alertmanager +1, the node exporter +2, the SLURM exporter +3.
    base_port: int = Field(16950, ge=1024, le=65000)
    state_dir: Optional[str] = None  # default: /tmp/mlops-validation/<stack>-monitoring
    # Short on the embedded default, so that an injected fault alerts within seconds (the rules' `for:` too).
    scrape_interval_seconds: float = Field(2.0, ge=0.5, le=60)
    # What the validation allows: an injected fault must alert, and its alert resolve, within these.
    alert_timeout_seconds: float = Field(120.0, ge=10, le=1800)
