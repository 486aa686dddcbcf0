FROM localhost/fidelity-base
ENV MIDVER=m1 PATH=/mid/bin:$PATH
COPY midfile /mid/midfile
LABEL mid=yes
