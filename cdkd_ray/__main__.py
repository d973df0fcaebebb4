from cdkd_ray.cli import main

main()
