from hybridorch.cli import main

main()
