from __future__ import annotations

from stream_detector.cli import main

raise SystemExit(main())
