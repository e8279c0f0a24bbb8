from e2eproxy.cli import main

raise SystemExit(main())
