from huselet.central.cli import main

raise SystemExit(main())
