"""streamlab: reproduce, measure and fix streaming response cutoffs in LLM agent apps, offline.

    import streamlab as sl
    from streamlab.faults import Cut, Stall

    with sl.MockLLM(tokens=40, itl=0.02) as mock:
        client = openai.OpenAI(base_url=mock.base_url_for(Cut(at=12)), api_key="unused")
        run = sl.record(lambda: client.chat.completions.create(model="m", messages=msgs, stream=True),
                        expected=40)
        run.outcome                      # Outcome.CUT_MID_STREAM, httpx.RemoteProtocolError

Taught in notebooks/00_start_here.ipynb. The hops between client and model
(proxy, nginx, app servers, balancer) live in ``streamlab.hops`` and friends.
"""

from . import faults, fixes, hops, load
from . import drills
from ._appserver import AppServer, Gunicorn, LogLine, Uvicorn
from ._balancer import Balancer, balancer_for
from ._browser import Browser, BrowserError, BrowserRun, BrowserTimeout, browser_available, browser_stream
from ._errors import IncompleteStream, LengthTruncation, UsageMismatch
from ._diagnose import DiagnoseError, Finding, Report, diagnose
from ._clients import (Abort, ClientTimeout, HTTPStream, SlowReader, StreamResult, TotalTimeout, app_event,
                       read_stream)
from ._mock import Journal, JournalEntry, MockApp, MockLLM
from ._mock_workers import MockCluster
from ._nginx import NginxBalancer, NginxProxy, nginx_available, proxy_for
from ._offline import NetworkBlocked, offline
from ._playground import playground, run_scenario
from ._proxy import Proxy
from ._redis import RedisServer, RedisUnavailable, redis_available
from ._plots import Comparison, compare, plot_hops, plot_runs, table
from ._recorder import Outcome, Run, StreamErrorEvent, arecord, record
from ._servers import Server, running_servers, stop_all
from ._setup import VersionMismatch, require
from ._sse import chat_request, sse_events
from ._timeline import HopEvent, HopLog
from ._timescale import current_time_scale, scale_sdk_backoff, time_scale
from ._ws import WSRun, ws_record

__version__ = "0.1.0"

__all__ = [
    "fixes", "IncompleteStream", "LengthTruncation", "UsageMismatch",
    "faults", "hops", "load", "drills",
    "MockLLM", "MockCluster", "MockApp", "Journal", "JournalEntry",
    "record", "arecord", "Run", "Outcome", "StreamErrorEvent",
    "compare", "Comparison", "table", "plot_runs", "plot_hops",
    "playground", "run_scenario",
    "sse_events", "chat_request",
    "time_scale", "current_time_scale", "scale_sdk_backoff",
    "HopLog", "HopEvent",
    "Server", "running_servers", "stop_all",
    "Proxy", "NginxProxy", "proxy_for", "nginx_available",
    "RedisServer", "RedisUnavailable", "redis_available",
    "AppServer", "Uvicorn", "Gunicorn", "LogLine", "Balancer", "balancer_for", "NginxBalancer",
    "HTTPStream", "StreamResult", "read_stream", "app_event", "Abort", "SlowReader", "ClientTimeout", "TotalTimeout",
    "offline", "NetworkBlocked",
    "diagnose", "Report", "Finding", "DiagnoseError",
    "require", "VersionMismatch",
    "Browser", "BrowserRun", "BrowserError", "BrowserTimeout", "browser_stream", "browser_available",
    "ws_record", "WSRun",
]
