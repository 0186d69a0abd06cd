from latentprobe.cli import main

main()
