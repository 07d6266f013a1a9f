from cc_proxy.cli import main

raise SystemExit(main())
