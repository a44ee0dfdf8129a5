from gridcam.cli import main

raise SystemExit(main())
