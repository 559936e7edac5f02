from dpsnet.cli import main

main()
